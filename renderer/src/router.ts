import { createRouter, createWebHashHistory } from 'vue-router';
import HomeView from './views/HomeView.vue';
import NewRunWizard from './wizard/NewRunWizard.vue';
import RunsView from './views/RunsView.vue';
import RunView from './views/RunView.vue';
import CompareView from './views/CompareView.vue';
import PlaygroundView from './views/PlaygroundView.vue';
import BakeoffSetupView from './views/BakeoffSetupView.vue';
import BakeoffView from './views/BakeoffView.vue';

// Hash history: works from file:// in Electron and keeps the token query of `lowrank serve` intact.
export const router = createRouter({
  history: createWebHashHistory(),
  routes: [
    { path: '/', component: HomeView },
    { path: '/new', component: NewRunWizard },
    { path: '/runs', component: RunsView },
    { path: '/runs/:id', component: RunView, props: true },
    { path: '/compare', component: CompareView },
    { path: '/playground', component: PlaygroundView },
    { path: '/bakeoff/new', component: BakeoffSetupView },
    { path: '/bakeoff/:id', component: BakeoffView, props: true },
  ],
});
