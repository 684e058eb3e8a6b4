"""Stateless handler functions and the domain state machines they drive."""
