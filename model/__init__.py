"""The network and its seeded training loop. Imports no Ray: usable on its own."""
