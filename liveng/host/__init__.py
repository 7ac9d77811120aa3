"""Host side of liveng: build, run, flash and inspect images."""
