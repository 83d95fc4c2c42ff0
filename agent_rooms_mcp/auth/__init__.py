"""Authentication: credential formats, passports, failed-attempt limits, and resolving the caller of each call."""
