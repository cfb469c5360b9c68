"""Proposers turn the exploration state into the next batch of config mutations."""
