"""Grading an edit: PSNR/SSIM, pixel criteria and the per-op success checks.
"""
