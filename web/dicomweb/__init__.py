"""DICOMweb STOW-RS: a PACS or a script stores instances by HTTP, into the same intake as the DICOM node."""

from web.dicomweb import stow

PAGES = stow.bp
