"""What wires processes together: the imgq CLI, the demo and the local stack of processes."""
