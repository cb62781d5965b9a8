"""Backbone loading, name normalising, resolution to 7-rank lineages, common names and caption texts."""
