"""flexavatar.runtime"""
