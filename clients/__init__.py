"""fedft's Flower ClientApp."""
