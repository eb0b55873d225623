"""README.md and docs/ point only at files that exist, the README's model zoo links every
downstream and ImageNet config, and the benchmark results files have the documented schema."""
import json
import re

import pytest

from _refs import REPO

PAGES = ['README.md', *sorted(str(p.relative_to(REPO)) for p in (REPO / 'docs').glob('*.md')),
         'tools/gpu/README.md']
# repository paths written in the text: markdown links and `code` spans naming a file
LINK = re.compile(r'\]\(([^)#\s]+)\)')
PATH = re.compile(r'(?<![\w./:-])((?:configs|docs|tools|tests|mmdefscan)/[\w./-]+\.(?:py|md|json|sh|yml))')


@pytest.mark.parametrize('page', PAGES)
def test_every_repository_path_in_the_docs_exists(page):
    text = (REPO / page).read_text()
    targets = {t for t in LINK.findall(text) if '://' not in t} | set(PATH.findall(text))
    missing = sorted(t for t in targets if not ((REPO / page).parent / t).exists()
                     and not (REPO / t).exists())
    assert not missing, f'{page} points at missing files: {missing}'


def test_the_model_zoo_links_every_config():
    readme = (REPO / 'README.md').read_text()
    # the ablation configs are listed in docs/ablations.md (test_ablation_configs.py)
    configs = {str(p.relative_to(REPO)) for p in (REPO / 'configs').rglob('*.py')
               if not {'demo', '_base_', 'ablations'}
               & set(p.relative_to(REPO / 'configs').parts)}
    linked = set(LINK.findall(readme))
    assert configs <= linked, sorted(configs - linked)


@pytest.mark.parametrize('name', ['benchmark_backbones.json', 'benchmark_maskrcnn.json'])
def test_benchmark_results_follow_the_documented_schema(name):
    results = json.loads((REPO / 'docs' / name).read_text())
    assert {'date', 'command', 'device', 'allocator', 'classification', 'downstream'} <= set(results)
    assert results['command'].startswith('python tools/analysis/benchmark.py')
    assert results['classification'] or results['downstream']
    for row in results['classification']:
        assert {'model', 'dtype', 'params_M', 'infer_img_s', 'train_img_s',
                'train_peak_GiB'} <= set(row), row
    for row in results['downstream']:
        assert {'config', 'dtype', 'batch', 'shape', 's_per_iter', 's_mean', 'peak_GiB'} <= set(row)
