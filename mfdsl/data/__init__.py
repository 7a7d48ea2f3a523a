"""mfdsl.data"""
