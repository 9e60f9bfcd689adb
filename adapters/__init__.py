"""Model backends behind one Protocol (see adapters.base)."""
