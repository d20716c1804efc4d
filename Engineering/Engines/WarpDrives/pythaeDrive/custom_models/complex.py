"""(being written)"""
SPECS: tuple = ()
