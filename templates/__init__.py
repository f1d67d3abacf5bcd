"""Jinja templates; shipped inside the package as ``qexport.templates``."""
