"""Host-side sandbox pool that runs model-written code under hard limits."""
