"""purerl: a pure-JAX laboratory for policy-gradient RL and efficient attention."""

__version__ = "0.1.0"
