"""Clinic and operator administration: clinics, relay domains, DNS, API keys, the dashboard."""
