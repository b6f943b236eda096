"""The patient journey's domain logic: enrolment, registration, requests, results, library.

The web routes in :mod:`gateway.web.portal` stay thin: they parse forms and render pages;
the rules (what a link may do, who may see what, what gets audited) live here, where the CLI,
the REST API and tests can call them too.
"""
