"""The platform on one machine: event sources, dispatcher, scheduler, HTTP trigger gateway, CLI."""
