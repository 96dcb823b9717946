"""flexavatar.kernels"""
