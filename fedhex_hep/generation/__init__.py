"""Generation: sampling the flow, moment morphing, mass scans, efficiencies."""
