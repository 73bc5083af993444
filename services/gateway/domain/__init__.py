"""Pure gateway logic: path templates, transcoding, OpenAPI, rate-limit arithmetic, webhooks."""
