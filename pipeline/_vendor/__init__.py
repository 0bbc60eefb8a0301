"""Third-party generated code, unmodified: mediapipe 1.2.2 (Apache-2.0, LICENSE.mediapipe).

The TFLite metadata flatbuffer schema (``metadata_schema_py_generated.py``) and
MediaPipe's image segmenter options schema, as shipped in the mediapipe wheel on PyPI
(``mediapipe/tasks/metadata/``). See pipeline/metadata.py for why they are vendored.
"""
