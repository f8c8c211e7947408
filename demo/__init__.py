"""The demo: small stand-ins for the services eventgw sits in front of."""
