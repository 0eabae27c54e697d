"""Rich live views fed by the loop's callbacks; plain text when stdout is not a terminal."""
