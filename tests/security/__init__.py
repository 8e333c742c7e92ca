"""The adversarial suite: attacks on a real lab, and fuzzing of every input boundary (docs/security.md)."""
