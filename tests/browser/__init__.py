"""Helpers for the dashboard's browser tests (headless Chromium driven by Playwright)."""
