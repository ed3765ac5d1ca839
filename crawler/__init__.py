"""Async, SSRF-safe crawling of hosted model links into delist / takedown recommendations."""
