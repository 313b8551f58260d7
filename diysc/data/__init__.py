"""Datasets in SPair-71k's layout: the official download, local samples and synthetic renders."""
