"""Small composable layers of the distillation methods, one file each."""
