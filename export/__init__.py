"""flexavatar.export"""
