"""Layer 5: the application — command line, run configuration files, run
directories, figures and the backprop comparison.  Nothing below imports it."""
