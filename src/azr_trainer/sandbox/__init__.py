"""The sandbox that runs model-written programs; executor.py is its public face and documents what
it defends and what it does not. Standard library only: the server process imports this package
under ``python -S -s`` (nothing it imports may import the rest of azr_trainer; pool.py, the
trainer's side, is not among them)."""
