"""The training side: the loop, one discussion batch, prompt builders, checkpoints, run
directories and the fast generation path. Nothing is imported here, so importing a
submodule stays cheap."""
