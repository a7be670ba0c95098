"""The rate-limit budgets: the protocol, the pure state machine, and one module per backend."""
