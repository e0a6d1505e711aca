"""The OpenAPI 3.1 description of the server (GET /openapi.json), written out by hand: three
paths, the upload form, the prediction record and the error body."""

from __future__ import annotations

__all__ = ["openapi_spec"]


def _error(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def openapi_spec(version: str, classes: list[str], max_upload_mb: float, max_files: int) -> dict:
    """The description of a server for a model with these classes and upload limits."""
    record = {
        "type": "object",
        "required": ["filename", "top", "ood", "ood_pvalue"],
        "properties": {
            "filename": {"type": ["string", "null"], "description": "as uploaded"},
            "top": {
                "type": "array",
                "description": "[label, probability] pairs, most probable first (top_k of them)",
                "items": {
                    "type": "array",
                    "prefixItems": [{"type": "string", "enum": classes}, {"type": "number"}],
                    "minItems": 2,
                    "maxItems": 2,
                },
            },
            "ood": {
                "type": ["boolean", "null"],
                "description": "unlike the training images (null: the model has no OOD output)",
            },
            "ood_pvalue": {
                "type": ["number", "null"],
                "description": "p-value of belonging to the training distribution",
            },
        },
    }
    predict = {
        "summary": "Classify one or several uploaded images",
        "parameters": [
            {
                "name": "top_k",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "default": 1},
                "description": "classes per image, most probable first",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                                "maxItems": max_files,
                                "description": "an image file; repeat the field for several",
                            }
                        },
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": "one record per uploaded file, in upload order",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["predictions"],
                            "properties": {"predictions": {"type": "array", "items": record}},
                        }
                    }
                },
            },
            "400": _error("bad top_k, malformed multipart body, no 'file' field, too many files"),
            "413": _error(f"request body above {max_upload_mb:g} MB"),
            "415": _error("the body is not multipart/form-data"),
            "422": _error("a file is empty, truncated or not an image (its name is given)"),
            "500": _error("the model failed on this batch"),
        },
    }
    health = {
        "summary": "Model, classes, status and counters",
        "responses": {
            "200": {"description": "serving", "content": {"application/json": {}}},
            "503": {"description": "the batch worker stopped", "content": {"application/json": {}}},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "automl-tl model server",
            "version": version,
            "description": "Image classification with an exported automl-tl model.",
        },
        "paths": {
            "/predict": {"post": predict},
            "/health": {"get": health},
            "/openapi.json": {
                "get": {
                    "summary": "This description",
                    "responses": {"200": {"description": "OpenAPI document"}},
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string", "description": "one line"}},
                }
            }
        },
    }
