"""Reading and writing files: minimlp's own checkpoints (:mod:`.checkpoint`)."""
