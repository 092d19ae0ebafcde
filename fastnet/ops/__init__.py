"""Public ops on NumPy arrays: validate arguments, allocate outputs, call one compiled kernel."""
