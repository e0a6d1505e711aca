"""serve: the HTTP endpoint production calls (`automl-tl serve`). A Starlette app (`app`)
that reads bounded multipart uploads, decodes them off the event loop and answers JSON; a
micro-batcher (`batcher`) that queues concurrent requests and runs up to a batch of images
at once in one worker thread; the OpenAPI description (`openapi`); the process around them
(`server`: bind the port, print the URL, run uvicorn); and a standard-library `client`.

May import: core, data, export (the Predictor: onnxruntime, numpy and Pillow). Never torch:
a serving process loads onnxruntime only.
"""
