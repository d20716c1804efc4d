"""GWAS-ready phenotypes from latents (export_gwas)."""
