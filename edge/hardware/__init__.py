"""Hardware of the inspection head behind small interfaces, each with a simulated twin."""
