"""fedft's Flower ServerApp."""
