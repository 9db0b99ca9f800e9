"""Pipeline stages, each registered by name through ``litecoder_register_stages``."""
