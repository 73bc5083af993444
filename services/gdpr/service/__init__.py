"""The gdpr service layer: async use cases and sagas (``usecases``) over units of work (``transactions``)."""
