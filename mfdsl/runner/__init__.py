"""mfdsl.runner"""
