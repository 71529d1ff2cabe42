"""Where each dataset comes from and under which terms — the provenance a model card carries.

The known entries restate ``shared/data/MANIFEST.md`` (source repository @ commit, and the terms
as written there). Names carry no file counts: a run may use a subset (the test fixtures are), and
the card's ``split_sizes`` say what was used. A folder we do not know is described honestly as user data of unknown license,
never guessed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class DatasetProvenance:
    name: str
    source: str
    license: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


UNKNOWN_LICENSE = "unknown (user data)"

# folder name under shared/data -> provenance (MANIFEST.md)
KNOWN: dict[str, DatasetProvenance] = {
    "summer2winter_yosemite": DatasetProvenance(
        name="summer2winter_yosemite",
        source="CycleGAN summer2winter_yosemite (Zhu et al., ICCV 2017; Flickr images), copied from "
        "github.com/Jacklu0831/GAN-Projects @ f2d6bd97d019f23b96b43a8136e99142e8572766 "
        "(3_CycleGAN_Seasons/summer2winter_yosemite)",
        license="no license given by the CycleGAN dataset page; research use, keep the Flickr "
        "photographers' rights in mind, cite Zhu et al. ICCV 2017",
    ),
    "facades": DatasetProvenance(
        name="CMP facades (pix2pix format)",
        source="CMP Facade Database (Tyleček & Šára, GCPR 2013), pix2pix download, copied from "
        "github.com/KKK1225/DIP_Homework @ 33f71971a645d64f01e4c5a45962faffd8472fa2",
        license="no license stated; distributed for research: cite Tyleček & Šára GCPR 2013 and "
        "pix2pix (Isola et al., CVPR 2017)",
    ),
    "monet_kaggle": DatasetProvenance(
        name="Monet paintings + photos (Kaggle 'I'm Something of a Painter Myself')",
        source="Kaggle gan-getting-started data, copied from github.com/WyattBlair77/MonetGAN @ "
        "cf9ea32c50ce678842b2ebc8da2617ae3e0e2465 (dataset/monet_jpg, dataset/photo_jpg)",
        license="Kaggle competition rules; Monet's paintings are public domain, the photos' "
        "provenance and license are undocumented: development and tests only, do not redistribute",
    ),
    "quickdraw": DatasetProvenance(
        name="Quick, Draw! 28x28 bitmaps",
        source="Quick, Draw! dataset, Google; copied from github.com/sukumr/Doodle-Classifier @ "
        "a4fae56015125f73b2fe9e6e086cfc7444f95577 (data/*.npy)",
        license="CC BY 4.0 (Quick, Draw! dataset, Google, CC BY 4.0)",
    ),
    "T91": DatasetProvenance(
        name="T91",
        source="Yang, Wright, Huang, Ma, 'Image Super-Resolution via Sparse Representation', IEEE TIP "
        "2010; copied from github.com/tegg89/SRCNN-Tensorflow @ 78be1a24697935fc39a3a8cf59a6632264afade7 "
        "(Train/)",
        license="no license stated for the images (the source repo's MIT license covers its code only); "
        "research use, with citation",
    ),
    "Set5": DatasetProvenance(
        name="Set5 (colour)",
        source="Set5 (Bevilacqua et al., BMVC 2012), copied from github.com/majedelhelou/denoising_datasets "
        "@ 58234876fef6f1b56306705c78dfd40cdb837b86 (CSet5/)",
        license="no license given; standard academic benchmark: research/benchmark evaluation with citation",
    ),
}


def provenance(data_dir: str | Path) -> DatasetProvenance:
    """Provenance of a data folder: a known shared/data folder (or a folder inside one), else user data.

    The closest known folder name on the path wins, so ``.../summer2winter_yosemite/trainA`` is known
    too; names are matched exactly (case-sensitive), like the folders in MANIFEST.md.
    """
    path = Path(data_dir)
    for part in reversed(path.parts):
        if part in KNOWN:
            return KNOWN[part]
    resolved = path.resolve() if path.exists() else path
    return DatasetProvenance(name=path.name or str(path), source=str(resolved), license=UNKNOWN_LICENSE)
