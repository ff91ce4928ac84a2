"""Field calibration of a head: dark frames, flat fields, LED balance, defective pixels."""
