"""mfdsl.passes"""
