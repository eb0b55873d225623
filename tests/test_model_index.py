"""model-index.yml and configs/metafile_*.yml list every config (but the demos and bases), with
the papers' numbers marked as such and no numbers of ours invented."""
import yaml

from _refs import REPO


def models():
    index = yaml.safe_load((REPO / 'model-index.yml').read_text())
    found = []
    for metafile in index['Import']:
        data = yaml.safe_load((REPO / metafile).read_text())
        collections = {c['Name'] for c in data['Collections']}
        for model in data['Models']:
            assert model['In Collection'] in collections, model['Name']
            found.append(model)
    return found


def test_every_config_in_the_index_exists():
    for model in models():
        assert (REPO / model['Config']).is_file(), model['Config']


def test_every_config_is_in_the_index():
    listed = [m['Config'] for m in models()]
    assert len(listed) == len(set(listed))
    # the ablation configs have no weights: docs/ablations.md lists them
    configs = {str(p.relative_to(REPO)) for p in (REPO / 'configs').rglob('*.py')
               if not {'demo', '_base_', 'ablations'}
               & set(p.relative_to(REPO / 'configs').parts)}
    assert configs == set(listed), (sorted(configs - set(listed)), sorted(set(listed) - configs))


def test_numbers_are_the_papers_and_ours_are_not_invented():
    names = set()
    for model in models():
        assert model['Name'] not in names
        names.add(model['Name'])
        assert model['Metadata']['Reported By'] == 'paper'
        for result in model['Results']:
            assert result['Task'] and result['Dataset'] and result['Metrics']
            assert all(isinstance(v, float) for v in result['Metrics'].values())
        for result in model['mmdefscan Results']:
            assert all(v is None for v in result['Metrics'].values()), model['Name']
        assert model['Weights'] is None
