"""Whole projects through the lab, as a user starts them; minutes each on 2 cores."""
