"""Device side of liveng: runs inside the image, standard library only."""
